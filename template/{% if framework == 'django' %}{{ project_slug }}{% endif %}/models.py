from django.db import connection, models

# Inserts the row or, if it exists, adds one under Postgres's row lock: no
# count is lost to concurrent requests, and it takes a single round trip.
INCREMENT = """
    INSERT INTO counter (name, value) VALUES (%s, 1)
    ON CONFLICT (name) DO UPDATE SET value = counter.value + 1
    RETURNING value
"""


class Counter(models.Model):
    """A named counter, such as the home page's visit count."""

    name = models.CharField(max_length=100, primary_key=True)
    value = models.BigIntegerField(default=0)

    class Meta:
        db_table = "counter"

    def __str__(self) -> str:
        return f"{self.name}: {self.value}"

    @classmethod
    def increment(cls, name: str) -> int:
        """Add one to the counter and return the new value, in one atomic statement."""
        with connection.cursor() as cursor:
            cursor.execute(INCREMENT, [name])
            return cursor.fetchone()[0]
