from sabun.cli import main

main()
