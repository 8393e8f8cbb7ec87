"""Scaling out: many files over many workers (`streamer batch`), locally or on a Ray cluster.

Every file goes through the same file job as `streamer file` (streamer.engine.file_job.stylize_file); this package
only decides which worker takes which file, retries files whose worker died, and keeps the record.
"""
