from tic_grpo_cli.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
