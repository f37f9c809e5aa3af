from curate_cli.main import main

main()
