from skinlesion.cli import main

main()
