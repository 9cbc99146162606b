from tuilm.cli import main

main()
