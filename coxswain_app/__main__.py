from coxswain_app.cli import main

main()
