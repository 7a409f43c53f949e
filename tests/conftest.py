pytest_plugins = ["tests.support.portal_fixtures"]
