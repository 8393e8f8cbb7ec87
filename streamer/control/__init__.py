"""Live parameters: the one handler of changes (params.py: terminal lines and both servers) and run's HTTP
control port (http.py)."""
