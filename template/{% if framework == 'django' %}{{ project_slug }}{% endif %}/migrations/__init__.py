"""Database migrations: `python manage.py makemigrations` writes new ones here."""
