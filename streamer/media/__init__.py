"""Media plumbing shared by sources, sinks, the file job, eval and the tests: the Frame with its one clock and
pacer (frames.py), the one latest-frame slot (slots.py), PyAV input and decoding (av_io.py), picture
orientation and colour tags (picture.py)."""
