"""xskproxy benchmarks: kernel paths vs AF_XDP paths on one lab (bench/README.md)."""
