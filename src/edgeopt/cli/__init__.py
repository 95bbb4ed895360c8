"""The command-line interface. Each ``cmd_<name>.py`` module here defines ``register(app)``;
``main.py`` discovers them by file name, so a new command touches no shared file."""
