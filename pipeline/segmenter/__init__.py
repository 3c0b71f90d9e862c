"""The segmenter that scores synthesized images: its file contract (file), and the job that
trains one for data sets without a standard segmenter (network, config, loop, job)."""
