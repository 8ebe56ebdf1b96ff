from eventstore.cli import run

run()
