"""The `blsp-emo` command line (`trainers.cli.main:main`): each subcommand a thin wrapper over one
function of the other rooms."""
