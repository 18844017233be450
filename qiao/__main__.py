from qiao.cli import main

main()
