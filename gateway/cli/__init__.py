"""The command lines: ``acore-gateway`` (gateway.py) and ``acore-endpoint`` (endpoint.py), and how both serve."""
