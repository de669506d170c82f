from deliberate.cli import app

app()
