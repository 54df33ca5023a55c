from gateway.cli.gateway import main

main()
