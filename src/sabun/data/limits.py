"""Upper bounds on data settings, shared by the config checks and the data-set reader."""

MAX_RESOLUTION = 4096  # pixels: a training / sampling side; SDXL trains at 1024, so this is 16x its area
MAX_BUCKET = (
    2 * MAX_RESOLUTION
)  # a bucket's longer side (the default max_bucket is resolution * 2); areas stay <= resolution^2
MAX_REPEATS = 10_000  # repeats of one image per epoch (kohya folders use about 1-100)
