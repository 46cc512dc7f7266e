"""Generated from proto/meshsec/v1 by proto/generate.py; do not edit."""
