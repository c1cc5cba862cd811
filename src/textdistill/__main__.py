from textdistill.cli import main

main()
