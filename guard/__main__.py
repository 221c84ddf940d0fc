from guard.cli.app import main

main()
