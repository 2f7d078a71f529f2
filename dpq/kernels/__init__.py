"""GPU kernels (Triton), imported lazily by dpq.torch_backend."""
