from coxswain.cli import main

main()
