from django.db import migrations, models

from pefthub_server.registry.generation import remove_triggers


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0005_blob_check"),
    ]

    operations = [
        migrations.CreateModel(
            name="CatalogueGeneration",
            fields=[
                ("id", models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
                ("value", models.BigIntegerField()),
            ],
        ),
        # The triggers are installed after every migrate (registry.apps); going back past this table drops them first.
        migrations.RunPython(migrations.RunPython.noop, remove_triggers),
    ]
