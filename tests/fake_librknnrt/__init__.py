"""The fake librknnrt of the tests (C sources, Makefile) and its Python helpers; see README.md."""
