"""Names unique ignoring case (namespaces; repositories within a namespace), and proof of blob possession.

A database that already holds names differing only in case cannot take the new
constraints: the migration stops before changing anything and lists the rows an
operator must rename (in the Django admin, or with SQL) before migrating again.
"""

import django.db.models.deletion
import django.db.models.functions.text
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models
from django.db.models import Count
from django.db.models.functions import Lower


def refuse_case_duplicates(apps, schema_editor):
    Namespace = apps.get_model("registry", "Namespace")
    Repository = apps.get_model("registry", "Repository")
    problems = []
    clashing = (Namespace.objects.annotate(key=Lower("name")).values("key").annotate(n=Count("id"))
                .filter(n__gt=1).values_list("key", flat=True))
    for key in clashing:
        names = sorted(Namespace.objects.annotate(key=Lower("name")).filter(key=key).values_list("name", flat=True))
        problems.append("namespaces " + ", ".join(f"`{n}`" for n in names))
    clashing = (Repository.objects.annotate(key=Lower("name")).values("namespace", "key").annotate(n=Count("id"))
                .filter(n__gt=1).values_list("namespace", "key"))
    for namespace, key in clashing:
        rows = Repository.objects.annotate(key=Lower("name")).filter(namespace=namespace, key=key)
        names = sorted(f"{r.namespace.name}/{r.name}" for r in rows.select_related("namespace"))
        problems.append("repositories " + ", ".join(f"`{n}`" for n in names))
    if problems:
        raise RuntimeError(
            "Names must now be unique ignoring case, and these differ only in case: "
            + "; ".join(problems)
            + ". Rename all but one of each group (Django admin or SQL), then run `pefthub-server migrate` again."
        )


class Migration(migrations.Migration):

    dependencies = [
        ('registry', '0002_version_job'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(refuse_case_duplicates, migrations.RunPython.noop),
        migrations.AlterField(
            model_name='namespace',
            name='name',
            field=models.CharField(db_index=True, max_length=64),
        ),
        migrations.AddConstraint(
            model_name='namespace',
            constraint=models.UniqueConstraint(django.db.models.functions.text.Lower('name'), name='uniq_namespace_name_ci'),
        ),
        migrations.RemoveConstraint(
            model_name='repository',
            name='uniq_repo_name',
        ),
        migrations.AddIndex(
            model_name='repository',
            index=models.Index(fields=['namespace', 'name'], name='repo_namespace_name_idx'),
        ),
        migrations.AddConstraint(
            model_name='repository',
            constraint=models.UniqueConstraint(models.F('namespace'), django.db.models.functions.text.Lower('name'), name='uniq_repo_name_ci'),
        ),
        migrations.CreateModel(
            name='BlobUpload',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('created_at', models.DateTimeField(db_index=True, default=django.utils.timezone.now, help_text='When it was last uploaded')),
                ('blob', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='uploads', to='registry.blob')),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'constraints': [models.UniqueConstraint(fields=('blob', 'user'), name='uniq_blob_upload')],
            },
        ),
    ]
