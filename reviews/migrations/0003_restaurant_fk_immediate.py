from django.db import migrations

# Django creates foreign keys DEFERRABLE INITIALLY DEFERRED, so a review of an unknown
# restaurant would fail only at COMMIT (and never inside a test's rolled-back transaction).
# Checked at the INSERT instead, the key validates the API's restaurant id, which saves a
# SELECT per review (reviews.services.review_create). The name is Django's, derived from the
# table and column, the same on every database.
FK = "reviews_review_restaurant_id_c4709367_fk_reviews_restaurant_id"


class Migration(migrations.Migration):
    dependencies = [("reviews", "0002_needs_analysis_index")]

    operations = [
        migrations.RunSQL(
            f"ALTER TABLE reviews_review ALTER CONSTRAINT {FK} NOT DEFERRABLE",
            f"ALTER TABLE reviews_review ALTER CONSTRAINT {FK} DEFERRABLE INITIALLY DEFERRED",
        )
    ]
