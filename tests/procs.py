"""Child processes the tests start: ending them, by their own handles only."""


def stop_processes(procs):
    """Kills those of ``procs`` still running, reaps them and closes their pipes."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
