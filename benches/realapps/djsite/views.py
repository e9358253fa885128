from django.http import HttpResponse, JsonResponse

from .items.models import Item


def hello(request):
    return HttpResponse("Hello, World!", content_type="text/plain")


def orm_rows(request):
    rows = [
        {"id": item.id, "name": item.name, "price": str(item.price), "quantity": item.quantity}
        for item in Item.objects.order_by("id")[:20]
    ]
    return JsonResponse(rows, safe=False)
