"""The ``helexa`` command: its click group (``commands``), running a role (``daemon``), what it prints
(``status``), downloads (``pull``), the commented example configuration (``config_template``) and the log
format (``logformat``)."""
