"""The node agent: what runs on another board to serve a farm's router over
TCP (``rknn-farm node``; :mod:`farm.node.agent`)."""
