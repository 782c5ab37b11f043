"""The serving benchmark (issue 18): `python -m benchmarks.serving --help`.

workload.py makes the requests, driver.py replays them and times them, stats.py and report.py turn
records into figures, daemon.py / peers.py / contenders.py are the contenders, models.py builds
what they serve, soak.py measures the daemon's memory.
"""
