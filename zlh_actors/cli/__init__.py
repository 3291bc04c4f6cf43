"""`zlh`: the operator's and tenant's command line for the control plane's HTTP API."""
