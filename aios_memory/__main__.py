from aios_memory.cli import main

main()
