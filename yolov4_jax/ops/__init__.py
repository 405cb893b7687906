"""Device-specific machinery behind one boundary: the convolution dispatch (`conv`) and what
only the CPU uses (Winograd convolutions, hand-written convolution gradients, the oneMKL custom
calls in `cpu_gemm` and its C++ source, host-memory settings in `hostmem`, XLA:CPU flags in
`xla_flags`). Every CPU-only path is chosen only when JAX runs on the CPU; GPU and TPU readers
can skip this package. Importing it imports nothing else.
"""
