"""Full-text search over signals: company name and raw_data text, kept current as a projection."""

from __future__ import annotations

import pytest

from eventstore import signal_store
from projections.search import raw_text

pytestmark = pytest.mark.anyio


def test_raw_text_collects_strings_and_numbers_but_not_keys() -> None:
    assert raw_text({"repo": "acme/rocket", "n": 3, "ok": True, "tags": ["ai", {"deep": "infra"}]}) == (
        "acme/rocket 3 ai infra"
    )


async def test_search_finds_signals_by_company_name_and_raw_data(store_url: str) -> None:
    async with signal_store(store_url, background=False, cleanup_interval=None) as store:
        acme = await store.save_signal("github_spike", "github", "domain:acme.ai", "Acme Robotics", 0.9,
                                       {"repo": "acme/rocket-engine", "topics": ["propulsion"]})  # fmt: skip
        beta = await store.save_signal("sec_filing", "sec", "domain:beta.io", "Beta Rocket Labs", 0.5,
                                       {"form": "S-1"})  # fmt: skip
        await store.save_signal("github_spike", "github", "domain:gamma.dev", "Gamma", 0.4, {"repo": "gamma/db"})
        assert [s.id for s in await store.search("robotics")] == [acme]
        assert [s.id for s in await store.search("propulsion")] == [acme]
        assert sorted(s.id for s in await store.search("rocket")) == [acme, beta]
        assert [s.id for s in await store.search("rocket labs")] == [beta]  # every word must match
        assert await store.search("nothing-like-this") == []
        assert await store.search("   ") == []
        assert len(await store.search("rocket", limit=1)) == 1
        found = (await store.search("Robotics"))[0]
        assert found == await store.get_signal(acme)


async def test_search_text_is_never_parsed_as_query_syntax(store_url: str) -> None:
    async with signal_store(store_url, background=False, cleanup_interval=None) as store:
        await store.save_signal("t", "s", "domain:q.io", 'Quote "Co" AND OR NOT', 0.5, {"x": "a*b (c)"})
        for text in ('"Co"', "AND", "OR NOT", "a*b", "(c)", "NEAR(", "col:umn", "'"):
            await store.search(text)  # no syntax error, whatever it finds
        assert len(await store.search('quote "co"')) == 1


async def test_search_follows_writes_and_rebuilds(store_url: str) -> None:
    async with signal_store(store_url, background=False, cleanup_interval=None) as store:
        first = await store.save_signal("t", "s", "domain:a.io", "Alpha", 0.5, {"note": "quantum"})
        assert [s.id for s in await store.search("quantum")] == [first]
        await store.runner.rebuild(["search"])
        assert [s.id for s in await store.search("quantum")] == [first]
        second = await store.save_signal("t", "s", "domain:b.io", "Bravo", 0.5, {"note": "quantum"})
        await store.mark_pushed(first, "page-1")
        results = await store.search("quantum")
        assert [s.id for s in results] == [first, second] or [s.id for s in results] == [second, first]
        assert {s.status for s in results} == {"pushed", "pending"}


@pytest.mark.parametrize(
    ("company", "query"),
    [("Café Noir", "cafe"), ("Zürich Robotics", "ZURICH"), ("Straße Labs", "strasse"), ("Ångström", "angström")],
)
async def test_search_ignores_accents_and_case_alike_on_both_backends(store_url: str, company: str, query: str) -> None:
    async with signal_store(store_url, background=False, cleanup_interval=None) as store:
        signal_id = await store.save_signal("github_spike", "github", "domain:x.io", company, 0.5, {"note": company})
        await store.save_signal("github_spike", "github", "domain:y.io", "Other", 0.5, {})
        assert [s.id for s in await store.search(query)] == [signal_id]
        assert [s.id for s in await store.search(company)] == [signal_id]


async def test_a_store_indexed_before_folding_is_rebuilt_on_open(store_url: str) -> None:
    """Search v1 stored the text as given; opening the store with v2 rebuilds it from the log."""
    async with signal_store(store_url, background=False, cleanup_interval=None) as store:
        signal_id = await store.save_signal("github_spike", "github", "domain:x.io", "Café Noir", 0.5, {})
        # As v1 left it: the text unfolded.
        await store.log.query("UPDATE search_g1 SET company_name = 'Café Noir'")
        await store.log.query("UPDATE projection_state SET version = 1 WHERE name = 'search'")
    async with signal_store(store_url, background=False, cleanup_interval=None) as store:
        await store.runner.catch_up()
        assert [s.id for s in await store.search("cafe")] == [signal_id]
        status = [(s.version, s.generation, s.state) for s in await store.projection_status() if s.name == "search"]
        assert status == [(2, 2, "live")]


async def test_search_survives_a_switch_between_its_refresh_and_its_query(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with (
        signal_store(store_url, background=False, cleanup_interval=None) as store,
        signal_store(store_url, background=False, cleanup_interval=None) as other,
    ):
        signal_id = await store.save_signal("github_spike", "github", "domain:x.io", "Quantum Labs", 0.5, {})
        assert [s.id for s in await store.search("quantum")] == [signal_id]
        await other.runner.rebuild(["search"])  # another process switches search: our table is dropped
        refresh = store.runner.refresh
        calls: list[int] = []

        async def stale_first() -> None:  # the switch landed right after our refresh
            calls.append(1)
            if len(calls) > 1:
                await refresh()

        monkeypatch.setattr(store.runner, "refresh", stale_first)
        assert [s.id for s in await store.search("quantum")] == [signal_id]
        assert len(calls) == 2
