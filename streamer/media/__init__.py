"""Media plumbing shared by sources, the file job, eval and the tests: PyAV input and decoding (``av_io``)."""
