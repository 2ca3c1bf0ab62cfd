"""Reading videos: decoding frames (:mod:`.decode`), in a child process that a crashing or hanging decoder
cannot take down (:mod:`.sandbox`), and the frame count from an MP4 header (:mod:`.mp4`)."""
