"""Models of the Django adapter's tests."""

from __future__ import annotations

from django.db import models

from cachecow.adapters.django import CachedManager


class Item(models.Model):
    """The contract suite's model (not watched: the contract invalidates by hand)."""

    id = models.IntegerField(primary_key=True)
    payload = models.CharField(max_length=100)


class Org(models.Model):
    name = models.CharField(max_length=50)
    objects = models.Manager()
    cached = CachedManager()


class Person(models.Model):
    email = models.EmailField(unique=True)
    name = models.CharField(max_length=100, blank=True)
    org = models.ForeignKey(Org, null=True, on_delete=models.CASCADE)
    objects = models.Manager()
    cached = CachedManager()


class Account(models.Model):
    """Opted in: Account.objects.get(...) itself is served from the cache."""

    handle = models.CharField(max_length=50, unique=True)
    balance = models.IntegerField(default=0)
    objects = CachedManager()


class Membership(models.Model):
    org = models.ForeignKey(Org, on_delete=models.CASCADE)
    person = models.ForeignKey(Person, on_delete=models.CASCADE)
    role = models.CharField(max_length=20)
    objects = models.Manager()
    cached = CachedManager()

    class Meta:
        constraints = (models.UniqueConstraint(fields=["org", "person"], name="one_membership"),)


class Everything(models.Model):
    when = models.DateTimeField(null=True)
    day = models.DateField(null=True)
    clock = models.TimeField(null=True)
    span = models.DurationField(null=True)
    money = models.DecimalField(max_digits=20, decimal_places=6, null=True)
    ratio = models.FloatField(null=True)
    token = models.UUIDField(null=True)
    blob = models.BinaryField(null=True)
    doc = models.JSONField(null=True)
    flag = models.BooleanField(null=True)
    text = models.TextField(null=True)
    objects = models.Manager()
    cached = CachedManager()


class ProxyPerson(Person):
    class Meta:
        proxy = True


class Profile(models.Model):
    """A unique foreign key that SET_NULL clears: the collector's UPDATE, with no signal."""

    person = models.OneToOneField(Person, null=True, on_delete=models.SET_NULL)
    nick = models.CharField(max_length=50, unique=True)
    objects = models.Manager()
    cached = CachedManager()


class Ticket(models.Model):
    number = models.IntegerField(unique=True)
    holder = models.CharField(max_length=50, default="")
    objects = CachedManager()


class Place(models.Model):
    name = models.CharField(max_length=50, unique=True)
    objects = models.Manager()
    cached = CachedManager()


class Restaurant(Place):
    """Multi-table inheritance: a save writes the parent's table too."""

    serves = models.CharField(max_length=50, default="")


class Stamped(models.Model):
    """A CachedManager declared on an abstract base: its concrete models are watched."""

    objects = CachedManager()

    class Meta:
        abstract = True


class Stamp(Stamped):
    code = models.CharField(max_length=20, unique=True)


class Badge(models.Model):
    """The base manager is the cached one: fetch must not go through it (it would recurse)."""

    code = models.CharField(max_length=20, unique=True)
    scan = models.FileField(upload_to="scans", blank=True)
    objects = CachedManager()

    class Meta:
        base_manager_name = "objects"


class Gadget(models.Model):
    id = models.UUIDField(primary_key=True)


class Part(models.Model):
    """A foreign key to a UUID primary key; a unique JSON field the cache cannot serve."""

    gadget = models.ForeignKey(Gadget, on_delete=models.CASCADE)
    spec = models.JSONField(unique=True, null=True)
    objects = CachedManager()
