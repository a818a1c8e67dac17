"""Performance benchmarks: training throughput and MFU (timing the trainer's own step), weak and strong scaling
over ranks, loader rates against a plain read, and model GFLOP/s against the measured matmul peak."""
