from avr_runtime.cli import main

main()
