"""The command line: commands, preflight, plan printing, console and exit codes."""
