from spatialreward.cli import main

main()
