"""Integrations of jamba_ext with other libraries (imported on demand, never by `import jamba_ext`).

    jamba_ext.integrations.transformers   swap_modules(hf_model), patch_kernel_functions(), and
                                          mamba_ssm / causal-conv1d compatible kernel functions
"""
