#!/usr/bin/env python
from pefthub_server.cli import main

if __name__ == "__main__":
    main()
