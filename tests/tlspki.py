"""Certificates made at test time: a CA, server certificates for localhost and 127.0.0.1
(RSA and EC keys, written in every format the server reads), client certificates signed
by the CA, and one signed by a CA the server does not trust."""

import datetime
import os
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PASSWORD = "correct horse"


def _name(**attrs):
    oids = {"CN": NameOID.COMMON_NAME, "O": NameOID.ORGANIZATION_NAME,
            "OU": NameOID.ORGANIZATIONAL_UNIT_NAME, "C": NameOID.COUNTRY_NAME}
    return x509.Name([x509.NameAttribute(oids[k], v) for k, v in attrs.items()])


def _pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


class Authority:
    """A CA that signs server and client certificates."""

    def __init__(self, common_name="rswaitress test CA"):
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(CN=common_name, O="rswaitress tests")
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self):
        return _pem(self.cert)

    def issue(self, subject, key, server=True):
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1")),
                x509.IPAddress(__import__("ipaddress").ip_address("::1")),
            ]), critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(self.key, hashes.SHA256())


def key_bytes(key, fmt):
    """The private key as PEM: ``pkcs8``, ``traditional`` (PKCS#1 for RSA, SEC1 for EC)
    or ``encrypted`` (PKCS#8 with PASSWORD)."""
    if fmt == "pkcs8":
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    if fmt == "traditional":
        return key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.TraditionalOpenSSL,
                                 serialization.NoEncryption())
    if fmt == "encrypted":
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.BestAvailableEncryption(PASSWORD.encode()))
    raise ValueError(fmt)


class Pki:
    """Files in ``directory``: ``ca.pem``; ``server.pem`` + ``server-key.pem`` (RSA,
    PKCS#8); ``client.pem``/``client-key.pem`` (trusted); ``rogue.pem``/``rogue-key.pem``
    (signed by another CA)."""

    def __init__(self, directory):
        self.dir = str(directory)
        self.ca = Authority()
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        self.server_rsa = self.ca.issue(_name(CN="localhost", O="rswaitress tests"), self.rsa_key)
        self.server_ec = self.ca.issue(_name(CN="localhost", O="rswaitress tests"), self.ec_key)
        self.ca_file = self.write("ca.pem", self.ca.pem)
        self.certfile = self.write("server.pem", _pem(self.server_rsa) + self.ca.pem)
        self.keyfile = self.write("server-key.pem", key_bytes(self.rsa_key, "pkcs8"))
        self.ec_certfile = self.write("server-ec.pem", _pem(self.server_ec))
        # A subject with characters RFC 4514 escapes.
        self.client_key = ec.generate_private_key(ec.SECP256R1())
        self.client_subject = _name(C="NL", O="Example, Inc.", CN="alice+ops")
        self.client = self.ca.issue(self.client_subject, self.client_key, server=False)
        self.client_certfile = self.write("client.pem", _pem(self.client))
        self.client_keyfile = self.write("client-key.pem", key_bytes(self.client_key, "pkcs8"))
        rogue_ca = Authority("not trusted CA")
        rogue_key = ec.generate_private_key(ec.SECP256R1())
        rogue = rogue_ca.issue(_name(CN="mallory"), rogue_key, server=False)
        self.rogue_certfile = self.write("rogue.pem", _pem(rogue))
        self.rogue_keyfile = self.write("rogue-key.pem", key_bytes(rogue_key, "pkcs8"))

    def write(self, name, data):
        path = os.path.join(self.dir, name)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def server_files(self, key_type, fmt, name):
        """(certfile, keyfile, password) for a server key of ``key_type`` (rsa, ec) in
        ``fmt``, written under ``name``."""
        key = self.rsa_key if key_type == "rsa" else self.ec_key
        cert = self.server_rsa if key_type == "rsa" else self.server_ec
        certfile = self.write(f"{name}.pem", _pem(cert))
        keyfile = self.write(f"{name}-key.pem", key_bytes(key, fmt))
        return certfile, keyfile, PASSWORD if fmt == "encrypted" else None

    def issue_server(self, name, common_name):
        """A new server certificate (same RSA key) under ``name``: for reload tests."""
        cert = self.ca.issue(_name(CN=common_name), self.rsa_key)
        return self.write(name, _pem(cert)), cert

    def client_context(self, cert=None, key=None, **kw):
        """An ssl context that trusts the CA, with a client certificate if given."""
        ctx = ssl.create_default_context(cafile=self.ca_file)
        for attr, value in kw.items():
            setattr(ctx, attr, value)
        if cert:
            ctx.load_cert_chain(cert, key)
        return ctx
