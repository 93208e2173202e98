"""`tic-grpo` and `python -m tic_grpo_cli`. Ctrl-C anywhere, even while cli.py's imports
(Hydra, then torch) load, ends with one line and exit 130, as a shell reports SIGINT; the
run dir of a run that wrote no results is removed on the way out (run_dir.RunDirGuard)."""

import sys


def main() -> int:
    try:
        from tic_grpo_cli.cli import main as cli_main

        return cli_main()
    except KeyboardInterrupt:
        try:
            print("interrupted", file=sys.stderr, flush=True)
        except BrokenPipeError:  # Ctrl-C under `| tee` ended the reader too
            from tic_grpo_cli.runtime.console import silence_closed_streams

            silence_closed_streams()
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
