"""Two services tested in one pytest session (tests/test_two_services.py), each as docs/testing.md
shows: a module with its start-up hook and `make_app()`, its conf/ next to it. Both listen to the
same topic, so one running the other's hook fails ("already has a listener")."""
