"""The SQL mirror of builds: tables, engines, migrations, writes and queries."""
