"""`python manage.py release` and any other command added here."""
