// placeholder: the BPF program lands with the sampler
